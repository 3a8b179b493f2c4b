"""vCPU and VM run state: the C run loop's fast table (fastpath), exit decoding (exits),
one vCPU's loop (loop), and running all vCPUs to a result (runner, result)."""
