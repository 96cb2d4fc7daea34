"""An --import module whose import fails with a message naming a URL with a password."""
raise RuntimeError("cannot reach postgresql://app:s3cretPassw0rd@db.example/app")
