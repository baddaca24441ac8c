"""The local backend: deployed functions run as processes on this machine.

`server` is the entry point, `backend` implements the provider seam, `store`
keeps deployed functions on disk, and `classic` and `http_mode` run the two
kinds of function. `definition` validates a deployment, and `processes`
contains the process-group and output helpers both modes share. `guardian`
is the small process that kills function processes when the provider dies.
`secrets` keeps secret values and the files functions read, and
`function_logs` keeps each function's output lines.
"""
