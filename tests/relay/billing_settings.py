"""The receiving service of tests/relay/test_scale.py: the test settings with the default
database pointed at the test's "other" database (``EVENTBUS_BILLING_DB_NAME``)."""

import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

DATABASES = {
    **DATABASES,
    "default": {**DATABASES["default"], "NAME": os.environ["EVENTBUS_BILLING_DB_NAME"]},
}
