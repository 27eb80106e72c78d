"""The one error type a request can fail with: a gRPC code and a message
that says what to change."""

import grpc


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
