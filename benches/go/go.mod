module kontext.local/benches/go

go 1.22
