"""What the merge job (:mod:`panfpn.engine.merge_run`) uses: the torch-free CPU merge loop and the output folder's checks."""
