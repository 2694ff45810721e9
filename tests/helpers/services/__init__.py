"""Small services written with the SDK, run as real worker processes by integration tests."""
