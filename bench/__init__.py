"""Benchmarks of the terminal, side by side with face_recognition (dlib) on the same photos.

Run with ``make bench`` (``python -m bench``) or ``edge bench``; ``--quick`` for a smoke run.
Each section measures one part and reports ``missing`` when that part is not installed yet.
"""
