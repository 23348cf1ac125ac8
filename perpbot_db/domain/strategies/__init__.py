"""Job producers: pure strategies that turn a market view into hedge-job bodies.

One module per strategy (``funding_arb``, ``arb``, ``volume``,
``hedge_rebalance``) over the shared vocabulary of :mod:`.base`.  Each is a
function of plain values (quotes, venues, its parameters, the state it needs,
``now`` and, where it randomises, a seeded ``random.Random``) that returns job
bodies in the exact JSON form ``perpbot submit`` takes, plus the reasons it
skipped what it skipped.  :mod:`perpbot_db.services.producers` reads the inputs
and submits the bodies through the validated, idempotent path.
"""
