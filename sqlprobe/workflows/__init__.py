"""What the commands do, as library calls: wait for a state, run a command after a
preflight (queue, isolated database), gather a diagnosis."""
