"""Test helpers shared across the test tiers (real components, no mocks)."""
