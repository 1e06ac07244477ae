"""Times to the second in the console: on call, "1 p.m." is not an answer."""

DATETIME_FORMAT = "Y-m-d H:i:s"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s"
