"""Errors a user can fix. The CLI prints them without a traceback and exits with status 2."""


class UserError(Exception):
    """Base of every error whose message tells the user what to change."""
