"""The Edgefleet controller: identity, enrolment, the device API and the operator API."""
