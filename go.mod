module github.com/ringattn/ringattn

go 1.26.0

require gonum.org/v1/gonum v0.17.0

require google.golang.org/protobuf v1.36.12 // indirect

tool google.golang.org/protobuf/cmd/protoc-gen-go
