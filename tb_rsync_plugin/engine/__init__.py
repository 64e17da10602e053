"""The engine: when each source syncs (scheduler), one cycle (service), what is known
(state and its journals), and watched inboxes.
"""
