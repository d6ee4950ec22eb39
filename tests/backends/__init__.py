"""One module per backend for the executor contract suite (tests/test_executor_contract.py).

Each module defines ``MARKS`` (pytest marks, e.g. what service it needs), ``CAN_LIST`` (whether
its executor lists executions for the janitor), optionally ``MERGED_STREAMS`` (the platform
keeps stdout and stderr as one log: both come back in stdout), and
``make_executor(request, **behaviour)``,
returning an executor on a host of its own. ``behaviour`` says what every execution of the
contract's command must look like, for backends that do not run it for real (the mock, a
stand-in for a cloud API): ``seconds`` it runs, its ``exit_code``, ``stdout`` and ``stderr``.
"""
