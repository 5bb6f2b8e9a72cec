"""fedsynth's error classes, each with the exit code the command line gives it.

Exit codes (also in every `--help`): 2 usage, 3 bad input (a file, a value, an output folder),
4 the job stopped or was refused, 5 an internal error, 130 interrupted. Errors a user can fix
derive from InputError (also a ValueError, as callers of the library expect); their message
says what is wrong and how to fix it.
"""

from __future__ import annotations

from pathlib import Path

EXIT_USAGE, EXIT_INPUT, EXIT_JOB, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 3, 4, 5, 130


class FedsynthError(Exception):
    exit_code = EXIT_INTERNAL


class InputError(FedsynthError, ValueError):
    """Bad input from the user: the message names it and says how to fix it."""

    exit_code = EXIT_INPUT


class FileProblems(InputError):
    """Every problem of one file (a policy, a job), listed at once."""

    def __init__(self, what: str, path: Path, problems: list[str]) -> None:
        self.path, self.problems = path, problems
        super().__init__(f"{what} {path} has {len(problems)} problem"
                         f"{'s' if len(problems) > 1 else ''}:\n"
                         + "\n".join(f"  - {p}" for p in problems))


class JobStopped(FedsynthError, RuntimeError):
    """The job was refused by a party or stopped (too few parties); nothing was released
    beyond what the parties' ledgers record."""

    exit_code = EXIT_JOB
