"""One exception type for every mistake a user can fix (bad config, bad file, bad name).

Scripts catch it and print a single line instead of a traceback; everything else is a bug.
"""


class UserError(Exception):
    """A problem with the user's input: a file, column, key or value, named in the message."""
