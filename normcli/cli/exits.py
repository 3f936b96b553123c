"""The exit codes, a contract with scripts and CI (README, "Exit codes and streams")."""

EXIT_OK = 0
EXIT_VIOLATION = 1  # `check` found a rule broken
EXIT_BAD_INPUT = 2  # bad usage or bad input: something the user can fix
EXIT_INTERNAL = 3  # a bug in normcli, told apart from a bad checkpoint in CI logs
