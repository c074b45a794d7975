package main

// Two sites, three centers (两地三中心): yunchi topology and yunchi center.
// Protection policies and RPO status are in policy.go, backups in backup.go.

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
	"github.com/yunchi/yunchi/scheduler"
)

// Center roles as the CLI writes and reads them. The Chinese names are all
// four characters wide, so that a column of them stays aligned in a
// terminal (text/tabwriter counts runes; a terminal draws each of these
// two cells wide).
var centerRoles = []struct {
	role    yunchiv1.CenterRole
	word    string
	chinese string
	aliases []string
}{
	{yunchiv1.CenterRole_CENTER_ROLE_PRODUCTION, "production", "生产中心", []string{"生产"}},
	{yunchiv1.CenterRole_CENTER_ROLE_SAME_CITY_DR, "same-city-dr", "同城灾备", []string{"同城灾备中心"}},
	{yunchiv1.CenterRole_CENTER_ROLE_REMOTE_DR, "remote-dr", "异地灾备", []string{"异地灾备中心"}},
}

const roleWords = "production, same-city-dr or remote-dr"

// parseRole reads --role: the English word or the Chinese name.
func parseRole(s string) (yunchiv1.CenterRole, bool) {
	for _, r := range centerRoles {
		if s == r.word || s == r.chinese {
			return r.role, true
		}
		for _, a := range r.aliases {
			if s == a {
				return r.role, true
			}
		}
	}
	return yunchiv1.CenterRole_CENTER_ROLE_UNSPECIFIED, false
}

// roleWord is "same-city-dr"; "-" for no role.
func roleWord(r yunchiv1.CenterRole) string {
	for _, x := range centerRoles {
		if x.role == r {
			return x.word
		}
	}
	return "-"
}

// roleChinese is "同城灾备"; for no role a four-character placeholder too.
func roleChinese(r yunchiv1.CenterRole, declared bool) string {
	for _, x := range centerRoles {
		if x.role == r {
			return x.chinese
		}
	}
	if !declared {
		return "尚未声明" // not declared yet
	}
	return "角色未定" // no role
}

// roleText is "same-city-dr (同城灾备)" for detail views.
func roleText(r yunchiv1.CenterRole) string {
	if w := roleWord(r); w != "-" {
		return w + " (" + roleChinese(r, true) + ")"
	}
	return "-"
}

func topologyCommand() *cli.Command {
	return &cli.Command{
		Name:  "topology",
		Usage: "sites and centers (两地三中心): roles, hosts, capacity, controllers and backup repositories",
		Description: "Every host is in the center its agent names (yunchid agent --center); a center is declared with\n" +
			"yunchi center set, which gives its site, its role (production, same-city-dr, remote-dr) and the\n" +
			"controller of that center that keeps its backup repository. Warnings name what would go wrong:\n" +
			"a center whose loss costs the controllers their quorum, hosts in undeclared centers, a DR center\n" +
			"without a repository.",
		Flags:  []cli.Flag{consistentFlag()},
		Action: withSession(topologyShow),
	}
}

func centerCommand() *cli.Command {
	return &cli.Command{
		Name:  "center",
		Usage: "declare, change or delete a center (see yunchi topology)",
		Subcommands: []*cli.Command{
			{
				Name:      "set",
				Usage:     "declare a center or change its site, role, description or repository",
				ArgsUsage: "NAME",
				UsageText: "yunchi center set NAME --site S --role production|same-city-dr|remote-dr [--description D] [--repository MEMBER]\n\n" +
					"NAME is the center hosts give (yunchid agent --center). Every setting is given each time: what\n" +
					"is left out is cleared. The repository's controller must be in the center; changing it is\n" +
					"refused while the center holds restore points.",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "site", Usage: "the site (city) the center is in, e.g. shanghai"},
					&cli.StringFlag{Name: "role", Usage: "production (生产), same-city-dr (同城灾备) or remote-dr (异地灾备)"},
					&cli.StringFlag{Name: "description", Usage: "one line of text"},
					&cli.StringFlag{Name: "repository", Usage: "the controller (member id, see yunchi cluster status) of this center that keeps its backup repository (default: none)"},
				},
				Action: withSession(centerSet),
			},
			{
				Name:      "delete",
				Aliases:   []string{"rm"},
				Usage:     "forget a declared center (refused while it has hosts, restore points, or a policy names it)",
				ArgsUsage: "NAME",
				Action:    withSession(centerDelete),
			},
		},
	}
}

func topologyShow(cCtx *cli.Context, s *session) error {
	if _, err := needArgs(cCtx); err != nil {
		return err
	}
	req := &yunchiv1.GetTopologyRequest{Consistent: cCtx.Bool("consistent")}
	t, err := do(s.ctx, s.client, retrySafe, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Topology, error) {
		return yunchiv1.NewTopologyServiceClient(cc).GetTopology(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(t, s.out.topology(t))
}

func centerSet(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	site, role := cCtx.String("site"), cCtx.String("role")
	if site == "" {
		return usagef("center set: --site is required: the site (city) %s is in, e.g. --site shanghai", args[0])
	}
	if role == "" {
		return usagef("center set: --role is required: %s", roleWords)
	}
	r, ok := parseRole(role)
	if !ok {
		return usagef("center set: --role %q is not valid: use %s", role, roleWords)
	}
	req := &yunchiv1.SetCenterRequest{Name: args[0], Site: site, Role: r, Description: cCtx.String("description"),
		RepositoryMember: cCtx.String("repository")}
	c, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.Center, error) {
		return yunchiv1.NewTopologyServiceClient(cc).SetCenter(ctx, req)
	})
	if err != nil {
		return err
	}
	return s.out.print(c, s.out.centerDetail(c))
}

func centerDelete(cCtx *cli.Context, s *session) error {
	args, err := needArgs(cCtx, "NAME")
	if err != nil {
		return err
	}
	resp, err := do(s.ctx, s.client, retryKeyed, func(ctx context.Context, cc grpc.ClientConnInterface) (*yunchiv1.DeleteCenterResponse, error) {
		return yunchiv1.NewTopologyServiceClient(cc).DeleteCenter(ctx, &yunchiv1.DeleteCenterRequest{Name: args[0]})
	})
	if err != nil {
		return err
	}
	return s.out.print(resp, func(w io.Writer) { fmt.Fprintf(w, "center %s deleted\n", args[0]) })
}

// --- output ---

// topology prints the sites, then the centers, then their repositories,
// then the warnings.
func (p *printer) topology(t *yunchiv1.Topology) func(io.Writer) {
	return func(w io.Writer) {
		centers := t.GetCenters()
		if len(centers) == 0 {
			fmt.Fprintln(w, "No centers: no host has registered and none is declared (yunchi center set).")
		} else {
			// Sites in the order the centers come (sorted by site).
			type site struct {
				name         string
				centers      []string
				ready, hosts int
				voters       int
			}
			var sites []*site
			for _, c := range centers {
				if len(sites) == 0 || sites[len(sites)-1].name != c.GetSite() {
					sites = append(sites, &site{name: c.GetSite()})
				}
				st := sites[len(sites)-1]
				st.centers = append(st.centers, c.GetName())
				st.ready += int(c.GetReadyHosts())
				st.hosts += len(c.GetHosts())
				st.voters += len(c.GetVoters())
			}
			fmt.Fprintln(w, "SITE\tCENTERS\tHOSTS\tVOTERS")
			for _, st := range sites {
				fmt.Fprintf(w, "%s\t%s\t%d/%d\t%d\n", orDefault(st.name, "- (undeclared)"), strings.Join(st.centers, ", "), st.ready, st.hosts, st.voters)
			}
			fmt.Fprintln(w)
			fmt.Fprintln(w, "CENTER\tSITE\tROLE\t中心角色\tHOSTS\tVCPUS ALLOC/CAP\tMEMORY ALLOC/CAP\tDISK ALLOC/CAP\tVOTERS")
			for _, c := range centers {
				role := roleWord(c.GetRole())
				if !c.GetDeclared() {
					role = "undeclared"
				}
				a, capa := c.GetAllocated(), c.GetCapacity()
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d/%d\t%d/%d\t%s/%s\t%s/%s\t%s\n",
					c.GetName(), dash(c.GetSite()), role, roleChinese(c.GetRole(), c.GetDeclared()),
					c.GetReadyHosts(), len(c.GetHosts()),
					a.GetVcpus(), capa.GetVcpus(),
					scheduler.FormatBytes(a.GetMemoryBytes()), scheduler.FormatBytes(capa.GetMemoryBytes()),
					scheduler.FormatBytes(a.GetDiskBytes()), scheduler.FormatBytes(capa.GetDiskBytes()),
					dash(strings.Join(c.GetVoters(), ", ")))
			}
			fmt.Fprintln(w)
			fmt.Fprintln(w, "REPOSITORY\tMEMBER\tADDRESS\tPOINTS\tCHUNKS\tSTORED\tLOGICAL\tDEDUP\tFREE")
			for _, c := range centers {
				r := c.GetRepository()
				if r.GetMember() == "" {
					fmt.Fprintf(w, "%s\tnone\t-\t-\t-\t-\t-\t-\t-\n", c.GetName())
					continue
				}
				if r.GetError() != "" {
					fmt.Fprintf(w, "%s\t%s\t%s\t%d\t-\t-\t-\t-\tunavailable: %s\n", c.GetName(), r.GetMember(), dash(r.GetAddress()), r.GetPoints(), r.GetError())
					continue
				}
				free := "-"
				if r.GetFreeBytes() > 0 {
					free = scheduler.FormatBytes(r.GetFreeBytes())
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\n", c.GetName(), r.GetMember(), dash(r.GetAddress()), r.GetPoints(), r.GetChunks(),
					scheduler.FormatBytes(r.GetStoredBytes()), scheduler.FormatBytes(r.GetLogicalBytes()),
					dedupRatio(r.GetLogicalBytes(), r.GetStoredBytes()), free)
			}
		}
		if ws := t.GetWarnings(); len(ws) > 0 {
			fmt.Fprintln(w)
			for _, x := range ws {
				fmt.Fprintf(w, "WARNING: %s\n", oneLine(x))
			}
		}
	}
}

// dedupRatio is what full copies would take over what is stored: "12.5x";
// "-" while nothing is stored.
func dedupRatio(logical, stored int64) string {
	if stored <= 0 || logical <= 0 {
		return "-"
	}
	return strconv.FormatFloat(float64(logical)/float64(stored), 'f', 1, 64) + "x"
}

func (p *printer) centerDetail(c *yunchiv1.Center) func(io.Writer) {
	return func(w io.Writer) {
		kv(w, "Name", c.GetName())
		kv(w, "Site", c.GetSite())
		kv(w, "Role", roleText(c.GetRole()))
		kv(w, "Description", c.GetDescription())
		kv(w, "Hosts", fmt.Sprintf("%d/%d ready", c.GetReadyHosts(), len(c.GetHosts())))
		kv(w, "Voters", strings.Join(c.GetVoters(), ", "))
		repo := "none"
		if m := c.GetRepository().GetMember(); m != "" {
			repo = m + orEmpty(" at ", c.GetRepository().GetAddress())
		}
		kv(w, "Repository", repo)
		kv(w, "Created", p.timestamp(c.GetCreatedAt()))
		kv(w, "Revision", strconv.FormatUint(c.GetRevision(), 10))
	}
}
