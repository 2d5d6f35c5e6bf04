"""From the network to the spool: listeners, who may send, and the intake.

Stands above ``delivery``: the intake routes each event and submits it to
the spool, which hands committed events to the lanes.
"""
