"""Services: one job each (tick, submit, cancel, archive, control, audit, market load).

Each is called once by a loop, a worker or a command with a connection or an
engine and its settings; none owns a thread, a signal or a process.
"""
