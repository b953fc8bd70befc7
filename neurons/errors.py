"""The error type of :mod:`neurons`: a wiring or input mistake, in one line that says what to do.

``neurons`` is a standalone library on SpikingJelly and imports nothing from the zoo; the zoo's command
line reports a :class:`NeuronError` like its own errors (one line, no traceback).
"""


class NeuronError(ValueError):
    """A model or input that the neurons / synapse layers cannot work with; the message says what to do."""
