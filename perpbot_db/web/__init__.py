"""The HTTP console: the JSON API (and, later, the dashboard) over the services.

``perpbot web`` serves it alone; ``perpbot run`` starts it beside the scheduler and
the workers.  It parses and answers, nothing more: every change goes through the same
service the CLI calls, with the same validation and audit.
"""
