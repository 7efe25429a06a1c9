# Wire formats shared by the firmware (MicroPython) and the edge (CPython).
#
# Every module here runs unchanged under both interpreters: no dataclasses,
# enum, typing or match at runtime; struct, bytes/memoryview and const() only.
# Every decoder is total: any input decodes or raises ProtocolError.
