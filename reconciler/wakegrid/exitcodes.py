"""Exit codes of the ``wakegrid`` command, which scripts can rely on."""

EXIT_OK = 0  # success: fleet valid, plan runnable, run done
EXIT_INVALID = 1  # the fleet file is invalid (every problem is listed)
EXIT_USAGE = 2  # usage error: bad arguments, unknown node
EXIT_BLOCKED = 3  # the plan is blocked (it says why; nothing was done)
EXIT_FAILED = 4  # a step failed while acting (the message names the step)
EXIT_BROKEN_PIPE = 141  # the output's reader went away (`wakegrid … | head`): 128 + SIGPIPE, as a shell reports it
