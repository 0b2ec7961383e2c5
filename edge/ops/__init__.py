"""Running the terminal as a service: ``health`` (disk, clock, temperature, power),
``selftest`` (the technician's one-verdict check), ``sdnotify`` (systemd notifications).
"""
