package main

// The HTML report of a failover, failback or drill (--format html): one
// self-contained page (no scripts, no outside resources) for the
// auditor's file, headed in Chinese and English. Built with html/template
// from recovery_report.html, which escapes every value.

import (
	_ "embed"
	"html/template"
	"io"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

//go:embed recovery_report.html
var runReportHTML string

var runReportTemplate = template.Must(template.New("report").Parse(runReportHTML))

// htmlReport is what the template shows, every value a formatted string.
type htmlReport struct {
	TitleZH, TitleEN string
	Plan             bool
	Summary          []htmlField
	Totals           []htmlField
	Columns          []htmlField // ZH, EN
	Rows             [][]htmlCell
	// Production: the drill's check ("" unless a drill).
	Production      string
	ProductionClass string
	Generated       string
}

type htmlField struct{ ZH, EN, Value string }

type htmlCell struct{ Text, Class string }

// runTitles: (Chinese, English) for each kind, report or plan.
var runTitles = map[string][2][2]string{
	kindFailover: {{"切换报告", "Failover report"}, {"切换计划", "Failover plan"}},
	kindFailback: {{"回切报告", "Failback report"}, {"回切计划", "Failback plan"}},
	kindDrill:    {{"演练报告", "Drill report"}, {"演练计划", "Drill plan"}},
}

var kindZH = map[string]string{kindFailover: "切换", kindFailback: "回切", kindDrill: "演练"}

var stateZH = map[string]string{runPlan: "计划", runRunning: "进行中", runSucceeded: "成功", runPartial: "部分成功", runFailed: "失败"}

func renderRunHTML(w io.Writer, run *yunchiv1.DRRun, now time.Time) error {
	return runReportTemplate.Execute(w, runHTMLView(run, now))
}

// utc is a time for the file: absolute, UTC, to the second.
func utc(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return ts.AsTime().UTC().Format("2006-01-02 15:04:05 UTC")
}

func bilingual(zh map[string]string, en string) string {
	if z := zh[en]; z != "" {
		return z + " " + en
	}
	return dash(en)
}

func runHTMLView(run *yunchiv1.DRRun, now time.Time) htmlReport {
	plan := run.GetState() == runPlan
	titles, ok := runTitles[run.GetKind()]
	if !ok {
		titles = [2][2]string{{"容灾运行报告", "DR run report"}, {"容灾运行计划", "DR run plan"}}
	}
	t := titles[0]
	if plan {
		t = titles[1]
	}
	v := htmlReport{TitleZH: t[0], TitleEN: t[1], Plan: plan, Generated: now.UTC().Format("2006-01-02 15:04:05 UTC")}

	from, to := [2]string{"生产中心", "Production center"}, [2]string{"灾备中心", "DR center"}
	if run.GetKind() == kindFailback {
		from, to = [2]string{"灾备中心", "DR center"}, [2]string{"生产中心", "Home center"}
	}
	add := func(zh, en, value string) { v.Summary = append(v.Summary, htmlField{zh, en, value}) }
	add("运行编号", "Run ID", dash(run.GetId()))
	add("类型", "Kind", bilingual(kindZH, run.GetKind()))
	add("状态", "State", bilingual(stateZH, run.GetState()))
	add(from[0], from[1], dash(run.GetFromCenter()))
	add(to[0], to[1], dash(run.GetToCenter()))
	add("项目", "Project", orDefault(run.GetProject(), "全部 all"))
	if run.GetKind() == kindDrill {
		add("演练项目", "Drill project", dash(run.GetDrillProject()))
	}
	if run.GetSchedule() != "" {
		add("演练计划任务", "Schedule", run.GetSchedule())
	}
	add("发起人", "Requested by", dash(run.GetRequestedBy()))
	if !plan {
		add("开始时间", "Started", utc(run.GetStartedAt()))
		add("结束时间", "Finished", utc(run.GetFinishedAt()))
	}
	if m := oneLine(run.GetMessage()); m != "" {
		add("说明", "Message", m)
	}

	if !plan {
		for _, x := range runTotals(run) {
			if x.en == "Production unchanged" {
				continue // shown on its own, prominently
			}
			v.Totals = append(v.Totals, htmlField{x.zh, x.en, x.value})
		}
		if run.GetKind() == kindDrill {
			v.Production = productionText(run)
			v.ProductionClass = "fail"
			if run.GetProductionUnchanged() {
				v.ProductionClass = "ok"
			}
		}
	}

	col := func(zh, en string) { v.Columns = append(v.Columns, htmlField{ZH: zh, EN: en}) }
	col("虚拟机", "VM")
	col("项目", "Project")
	col("策略", "Policy")
	label := vmLabeler(run)
	switch {
	case plan:
		if run.GetKind() == kindFailback {
			col("当前所在", "Now in")
		} else {
			col("预计数据丢失（恢复点年龄）", "Expected data loss (point age)")
		}
		col("预计恢复时间", "Expected RTO")
		col("目标或跳过原因", "Target or skip reason")
		for _, vm := range run.GetVms() {
			second := expectedLoss(vm)
			if run.GetKind() == kindFailback {
				second = dash(vm.GetFromHost())
				if c := vm.GetFromCenter(); c != "" {
					second += " (" + c + ")"
				}
			}
			target := planTarget(run, vm)
			v.Rows = append(v.Rows, []htmlCell{{Text: label(vm)}, {Text: dash(vm.GetProject())}, {Text: dash(vm.GetPolicy())},
				{Text: second}, {Text: seconds(vm.GetExpectedRtoSeconds())}, {Text: target, Class: stepClass(vm.GetStep())}})
		}
	case run.GetKind() == kindFailback:
		col("原中心", "From")
		col("主机", "Host")
		col("恢复时间 RTO", "RTO")
		col("停机时间", "Downtime")
		col("结果", "Outcome")
		for _, vm := range run.GetVms() {
			v.Rows = append(v.Rows, []htmlCell{{Text: label(vm)}, {Text: dash(vm.GetProject())}, {Text: dash(vm.GetPolicy())},
				{Text: dash(vm.GetFromCenter())}, {Text: dash(vm.GetHost())}, {Text: millis(vm.GetRtoMillis())},
				{Text: millis(vm.GetDowntimeMillis())}, {Text: outcome(vm), Class: stepClass(vm.GetStep())}})
		}
	default:
		col("恢复点", "Restore point")
		if run.GetKind() == kindDrill {
			col("克隆", "Clone")
		}
		col("主机", "Host")
		col("恢复时间 RTO", "RTO")
		col("恢复点 RPO", "RPO (data loss)")
		col("结果", "Outcome")
		for _, vm := range run.GetVms() {
			row := []htmlCell{{Text: label(vm)}, {Text: dash(vm.GetProject())}, {Text: dash(vm.GetPolicy())}, {Text: pointOf(vm)}}
			if run.GetKind() == kindDrill {
				row = append(row, htmlCell{Text: dash(vm.GetClone())})
			}
			row = append(row, htmlCell{Text: dash(vm.GetHost())}, htmlCell{Text: millis(vm.GetRtoMillis())},
				htmlCell{Text: dataLoss(vm)}, htmlCell{Text: outcome(vm), Class: stepClass(vm.GetStep())})
			v.Rows = append(v.Rows, row)
		}
	}
	return v
}

// stepClass colours the outcome cell.
func stepClass(step string) string {
	switch step {
	case "running", "done":
		return "ok"
	case "failed":
		return "fail"
	case "skipped":
		return "skip"
	}
	return ""
}
