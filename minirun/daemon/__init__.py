"""minirun's supervision of detached containers.

Two processes, so that the one that holds the containers never has to go away:

- the keeper (keeper.py): tiny, long-lived, the parent (as a child subreaper) of every
  detached container's init. It creates containers when asked, keeps the read ends of
  their stdout/stderr pipes (or the pty master of a -t container, and the write end of
  a -i container's stdin), reaps them and writes each exit status to a file the moment
  it learns it. It knows nothing of images, logs or restart policies.
- the daemon (server.py): `minirun daemon`, the part that may be killed and restarted.
  It serves the CLI on a unix socket, writes the containers' output to CRI-format logs
  (taking the pipes from the keeper over SCM_RIGHTS, again after a restart), records exit
  codes in the engine's database and applies restart policies.

Killing the daemon with SIGKILL loses nothing: the containers stay children of the
keeper, their pipes stay open (output waits in the pipe), and their exit statuses are in
files; the next daemon adopts them all.
"""
