"""The domain: pure decisions (lifecycle, job spec, risk, capital, admission, execution).

No SQL, no database driver, no clock: every function takes what it decides on,
``now`` included, and returns a value.  Tested directly, without a database.
"""
