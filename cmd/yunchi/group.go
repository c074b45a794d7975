package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

func groupCommand() *cli.Command {
	return &cli.Command{
		Name:  "group",
		Usage: "placement groups: keep VMs together (affinity) or apart (anti-affinity)",
		Subcommands: []*cli.Command{
			{
				Name:      "create",
				Usage:     "create a placement group",
				ArgsUsage: "NAME",
				UsageText: "yunchi group create NAME --policy affinity|anti-affinity [--level host|rack|center] [--soft] [--max-per-host N] [--project P]\n\n" +
					"Hard (default): no placement breaks the rule. --soft: a preference only.\n" +
					"--max-per-host is always hard. VMs join with `yunchi vm create --group NAME`.",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "policy", Usage: "affinity (together) or anti-affinity (apart)", Required: false},
					&cli.StringFlag{Name: "level", Usage: "host, rack or center", Value: "host"},
					&cli.BoolFlag{Name: "soft", Usage: "a preference, not a rule"},
					&cli.IntFlag{Name: "max-per-host", Usage: "at most this many members on one host (0: no limit)"},
					projectFlag(),
				},
				Action: withSession(groupCreate),
			},
			{
				Name:    "list",
				Aliases: []string{"ls"},
				Usage:   "list placement groups",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "project", Aliases: []string{"p"}, Usage: "only groups of this project"},
					consistentFlag(),
				},
				Action: withSession(groupList),
			},
			{
				Name:      "show",
				Aliases:   []string{"get"},
				Usage:     "show one placement group and its members",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{projectFlag(), consistentFlag()},
				Action:    withSession(groupShow),
			},
			{
				Name:      "delete",
				Aliases:   []string{"rm"},
				Usage:     "delete a placement group (refused while it has members)",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{projectFlag()},
				Action:    withSession(groupDelete),
			},
		},
	}
}

func groupCreate(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	req := &yunchiv1.CreateGroupRequest{Name: args[0], Project: cCtx.String("project"), Soft: cCtx.Bool("soft")}
	switch strings.ToLower(cCtx.String("policy")) {
	case "affinity":
		req.Policy = yunchiv1.GroupPolicy_GROUP_POLICY_AFFINITY
	case "anti-affinity", "anti_affinity", "antiaffinity":
		req.Policy = yunchiv1.GroupPolicy_GROUP_POLICY_ANTI_AFFINITY
	case "":
		return usagef("group create: --policy is required: affinity or anti-affinity")
	default:
		return usagef("group create: --policy %q is not valid: use affinity or anti-affinity", cCtx.String("policy"))
	}
	switch strings.ToLower(cCtx.String("level")) {
	case "host":
		req.Level = yunchiv1.GroupLevel_GROUP_LEVEL_HOST
	case "rack":
		req.Level = yunchiv1.GroupLevel_GROUP_LEVEL_RACK
	case "center":
		req.Level = yunchiv1.GroupLevel_GROUP_LEVEL_CENTER
	default:
		return usagef("group create: --level %q is not valid: use host, rack or center", cCtx.String("level"))
	}
	n := cCtx.Int("max-per-host")
	if n < 0 || n > 1000 {
		return usagef("group create: --max-per-host %d is out of range: give 0 (no limit) to 1000", n)
	}
	req.MaxPerHost = int32(n)
	g, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.PlacementGroup, error) {
		return yunchiv1.NewGroupServiceClient(cc).CreateGroup(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(g, s.out.groupDetail(g))
}

func groupList(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	req := &yunchiv1.ListGroupsRequest{Project: cCtx.String("project"), Consistent: cCtx.Bool("consistent")}
	resp, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.ListGroupsResponse, error) {
		return yunchiv1.NewGroupServiceClient(cc).ListGroups(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(resp, s.out.groupList(resp.GetGroups()))
}

func groupShow(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	req := &yunchiv1.GetGroupRequest{Name: args[0], Project: cCtx.String("project"), Consistent: cCtx.Bool("consistent")}
	g, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.PlacementGroup, error) {
		return yunchiv1.NewGroupServiceClient(cc).GetGroup(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(g, s.out.groupDetail(g))
}

func groupDelete(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	req := &yunchiv1.DeleteGroupRequest{Name: args[0], Project: cCtx.String("project")}
	// retryKeyed: a resend after a delete that went through gets its first answer, not "not found".
	resp, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.DeleteGroupResponse, error) {
		return yunchiv1.NewGroupServiceClient(cc).DeleteGroup(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(resp, func(w io.Writer) { fmt.Fprintf(w, "group %s deleted\n", req.Name) })
}

func groupPolicy(p yunchiv1.GroupPolicy) string {
	return strings.ReplaceAll(enumWord(p.String(), "GROUP_POLICY_"), "_", "-")
}

func groupLevel(l yunchiv1.GroupLevel) string {
	if l == yunchiv1.GroupLevel_GROUP_LEVEL_UNSPECIFIED {
		return "host"
	}
	return enumWord(l.String(), "GROUP_LEVEL_")
}

func groupHardness(g *yunchiv1.PlacementGroup) string {
	if g.GetSoft() {
		return "soft"
	}
	return "hard"
}

func (p *printer) groupList(gs []*yunchiv1.PlacementGroup) func(io.Writer) {
	return func(w io.Writer) {
		fmt.Fprintln(w, "NAME\tPROJECT\tPOLICY\tLEVEL\tRULE\tMAX/HOST\tMEMBERS\tAGE")
		for _, g := range gs {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", g.GetName(), g.GetProject(), groupPolicy(g.GetPolicy()),
				groupLevel(g.GetLevel()), groupHardness(g), maxPerHost(g.GetMaxPerHost()), len(g.GetMembers()), p.age(g.GetCreatedAt()))
		}
	}
}

func maxPerHost(n int32) string {
	if n == 0 {
		return "-"
	}
	return strconv.Itoa(int(n))
}

func (p *printer) groupDetail(g *yunchiv1.PlacementGroup) func(io.Writer) {
	return func(w io.Writer) {
		kv(w, "Name", g.GetName())
		kv(w, "Project", g.GetProject())
		kv(w, "Policy", groupPolicy(g.GetPolicy()))
		kv(w, "Level", groupLevel(g.GetLevel()))
		kv(w, "Rule", groupHardness(g))
		kv(w, "Max per host", maxPerHost(g.GetMaxPerHost()))
		kv(w, "Members", strings.Join(g.GetMembers(), ","))
		kv(w, "Created", p.timestamp(g.GetCreatedAt()))
	}
}
