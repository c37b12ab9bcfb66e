"""The one exception type for bad user input, so every face can show it without a traceback."""


class InputError(ValueError):
    """A file, array or setting the user gave cannot be used; the message says why and what to do."""
