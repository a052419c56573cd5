"""The signal stage: training-time capture into smdebug trials, reading trials, ranking filters."""
