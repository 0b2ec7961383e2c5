"""Fleet updates: signed releases, their delivery, side-by-side install and rollback."""
