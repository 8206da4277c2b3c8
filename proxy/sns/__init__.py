"""SES notifications over Amazon SNS: signature check (`verify`), SES JSON -> events (`ses`), and
the HTTP intake the API listener mounts (`intake.sns_routes`). Events are recorded with source `ses`."""
from proxy.sns.intake import SnsIntake, sns_routes

__all__ = ["SnsIntake", "sns_routes"]
