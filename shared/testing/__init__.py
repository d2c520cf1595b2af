"""Helpers for the test suites (prerequisite checks); imported by tests only, needs pytest."""
