"""The study file: its schema (:mod:`.study`, :mod:`.sections`, :mod:`.space`) and reading it (:mod:`.loading`)."""
