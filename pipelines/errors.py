"""The error of one input item, in a module of its own: the light modules (audio windows, job settings) raise it
without importing the media stack (PyAV, torch) that defines the rest."""


class ItemError(Exception):
    """An input that cannot be materialized (unreadable, truncated, missing track, too short): the message says
    why, and the job records it as a failure of that item and goes on."""
