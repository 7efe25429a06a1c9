"""Peripheral models of an emulated board: what the firmware's `machine` calls talk to.

Each model has two faces: `vm_*` methods the rig channel calls for the
firmware, and plain methods and attributes a test uses to drive and observe
the hardware (set a pin, read a PWM duty history, park a car over the
magnetometer).
"""
