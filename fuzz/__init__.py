"""Coverage-guided fuzzing of mailsrv's network and mail parsers (atheris / libFuzzer).

:mod:`fuzz.harness` defines a :class:`~fuzz.harness.Target` (a parser entry point, the errors it
documents, its seeds and its bounds); :mod:`fuzz.targets` lists them; ``python -m fuzz`` runs,
replays and lists them (README.md, Development: Fuzzing).
"""
