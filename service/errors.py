"""The one error type a request can fail with: a gRPC code and a message
that says what to change."""

import grpc


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Undecodable:
    """Stands in for a request message that did not parse, so the call can
    answer INVALID_ARGUMENT instead of gRPC's generic INTERNAL."""

    request_id = ""

    def __init__(self, message_type: str):
        self.message_type = message_type

    def error(self) -> RequestError:
        return RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request is not a valid {self.message_type}: the bytes are not valid "
            "protobuf, or a string field holds invalid UTF-8 (send text as UTF-8)")
