# The emulated board's MicroPython side: modules that run inside the VM.
#
# `start.py` is the VM's entry script; `bootseq.py` loads these modules (as the
# package `board`, precompiled to .mpy by the rig) before it mounts the board's
# flash at `/`, installs them under the names the firmware imports (`machine`,
# `time`, `bluetooth`), then forgets the package name so that firmware files
# named `board*` on the flash still import. The rig channel they share with
# the supervisor is described in rigwire.py.
