package main

import (
	"context"

	"google.golang.org/grpc"
)

// listPage is the page size lists ask for: the API's largest. One answer
// of every VM or host of a large cloud would pass gRPC's 4 MiB message
// limit, so lists come in pages.
const listPage = 5000

// allPages asks for every page of a list (page gets the page token, "" for
// the first) and hands each answer to each. Pages are cut at keys, so an
// item added or deleted meanwhile moves no other item in or out.
func allPages[R interface{ GetNextPageToken() string }](s *session, page func(context.Context, grpc.ClientConnInterface, string) (R, error), each func(R)) error {
	token := ""
	for {
		resp, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (R, error) {
			return page(ctx, cc, token)
		})
		if err != nil {
			return err
		}
		each(resp)
		if token = resp.GetNextPageToken(); token == "" {
			return nil
		}
	}
}
