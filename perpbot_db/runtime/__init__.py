"""The process runtime: the scheduler service, the daemon, the embedded server,
the engine and the migrations.  Loops and processes live here; what they do each
round is a service.
"""
