"""Operations behind each GraphQL field: authorize rows, validate, call db/, shape the result."""
