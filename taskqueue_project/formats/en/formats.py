"""Times to the second, with their time zone, in the console: on call, "1 p.m." is not an answer."""

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s"
