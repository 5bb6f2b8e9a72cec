"""The wire: protobuf messages, their validation, and the rounds both roles follow."""
