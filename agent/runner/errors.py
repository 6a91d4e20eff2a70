"""What the agent's side of the runner raises: one family with the rest of Edgefleet.

    EdgefleetError                     (edgefleet.errors)
    ├── RunnerError                    the runner cannot serve
    │   ├── RunnerStartError           the child did not come up; carries its stderr tail
    │   └── RunnerUnavailable          no answer: the child died, restarts, or was stopped
    └── ApiError                       the runner answered with an error status
        └── BadRequest           400   the inputs do not fit the model; the runner says how

The runner's error answers use the controller's body shape, so
:func:`edgefleet.errors.from_response_body` turns them back into ``ApiError``.
"""

from __future__ import annotations

from edgefleet.errors import EdgefleetError


class RunnerError(EdgefleetError):
    default_code = "runner"


class RunnerStartError(RunnerError):
    default_code = "runner_start"


class RunnerUnavailable(RunnerError):
    default_code = "runner_unavailable"
