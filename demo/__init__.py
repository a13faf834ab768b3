"""The demo: a simulated GPU fleet running the real agent and optimizer (``make demo``).

It imports both ``agent/`` and ``optimizer/``, which import nothing of each other.
"""
