"""The base of every error a user can cause and fix (bad input, a refused export), so the
command line reports them as one clear line and exit code 2 instead of a traceback. It lives in
the lowest layer so every layer can raise one."""


class SortlineError(Exception):
    """An error whose message says what is wrong and, where it can, what to do."""
