"""``python -m hms_otel_agent.sample <command>``: the same as the sample's manage.py."""

import sys

from hms_otel_agent.sample.manage import main

if __name__ == "__main__":
    main(["python -m hms_otel_agent.sample", *sys.argv[1:]])
