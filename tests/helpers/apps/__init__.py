"""Small runnable apps that embed ``engine.Engine``, started as processes by the tests."""
