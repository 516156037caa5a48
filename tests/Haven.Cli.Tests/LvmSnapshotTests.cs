using System.Diagnostics;
using System.Text.Json.Nodes;
using Haven.Testing;
using Xunit;

namespace Haven.Cli.Tests;

/// <summary>
/// Image backups of a mounted LVM logical volume that is written while it is read. This machine's kernel has no
/// device-mapper, so the test runs in a virtual machine (tests/vm/run.sh: qemu with Debian's kernel, this machine's
/// root filesystem over 9p, a blank disk for the volume group) the haven binary of this test's output folder.
/// The emulated machine keeps both cores busy for minutes, so it runs alone, after the tests that run in parallel:
/// beside them it made a timing-sensitive test (a backup killed midway) fail once.
/// </summary>
[Collection(VirtualMachineCollection.Name)]
public sealed class LvmSnapshotTests
{
    [Fact]
    public async Task AMountedVolumeBeingWritten_IsReadFromASnapshot_ThatIsRemovedAfterwards_AFullSnapshotFailsTheBackup_AnIdleVolumeNeedsNone_AndAThinVolumeGetsAThinSnapshot()
    {
        using var cli = new HavenCli();
        string w = cli.Root;
        string haven = HavenCli.Executable;
        string dotnetRoot = Environment.GetEnvironmentVariable("DOTNET_ROOT") is { Length: > 0 } root ? $"export DOTNET_ROOT={root}" : "";
        string script = Path.Combine(w, "guest.sh");
        File.WriteAllText(script, $$"""
            set -u
            {{dotnetRoot}}
            export HAVEN_PASSWORD_FILE={{cli.PasswordFile}} HAVEN_REPOSITORY={{cli.Repository}} HAVEN_CACHE_DIR=/run/cache
            h={{haven}}
            pvcreate -q /dev/vda && vgcreate -q vg0 /dev/vda && lvcreate -q -y -n data -L 192M vg0 || exit 10
            mkfs.ext4 -q /dev/vg0/data && mkdir -p /run/d /run/r /run/src && mount /dev/vg0/data /run/d || exit 11
            for i in 1 2 3 4 5 6 7 8; do head -c $((i * 1300000)) /dev/urandom > /run/src/f$i; done
            cp /run/src/f* /run/d/ && sync
            # What a backup killed earlier would have left: a snapshot with Haven's tag, named after a process that is
            # gone; and the user's own snapshot with such a name but no tag, which must stay.
            lvcreate -q -y -s -n haven-999999-data --addtag haven-image-backup -L 16M vg0/data || exit 12
            lvcreate -q -y -s -n haven-999998-mine -L 16M vg0/data || exit 12
            $h init -q || exit 13
            # Writes go on during the backups: 8 MiB rewritten in place, over and over.
            ( while :; do dd if=/dev/urandom of=/run/d/busy bs=1M count=8 conv=notrunc oflag=direct status=none; done ) &
            writer=$!
            $h image backup /dev/vg0/data --json > {{w}}/backup.json; echo "backup=$?"
            lvs --noheadings -o lv_name vg0 | tr -d ' ' > {{w}}/lvs-after.txt
            # A copy-on-write area too small for the writes: the snapshot fills, and the backup must fail.
            $h image backup /dev/vg0/data --lvm-snapshot-size 4M > {{w}}/small.out 2>&1; echo "small=$?"
            lvs --noheadings -o lv_name vg0 | tr -d ' ' > {{w}}/lvs-after-small.txt
            kill $writer; wait $writer 2>/dev/null
            $h image restore latest --target {{w}}/restored.img > {{w}}/restore.out 2>&1; echo "restore=$?"
            e2fsck -fn {{w}}/restored.img > {{w}}/fsck.out 2>&1; echo "fsck=$?"
            mount -o loop,ro {{w}}/restored.img /run/r && for i in 1 2 3 4 5 6 7 8; do cmp /run/src/f$i /run/r/f$i || echo "differs: f$i"; done; ls -l /run/r/busy; umount /run/r
            umount /run/d && lvremove -q -f vg0/haven-999998-mine
            # Neither mounted nor held open: read as it is, without a snapshot.
            $h image backup /dev/vg0/data --json > {{w}}/idle.json; echo "idle=$?"
            # A thin volume: a thin snapshot in its pool.
            lvcreate -q -y --type thin-pool -L 96M -n pool vg0 && lvcreate -q -y -V 64M --thin -n thin vg0/pool || exit 14
            mkfs.ext4 -q /dev/vg0/thin && mount /dev/vg0/thin /run/d && cp /run/src/f1 /run/src/f2 /run/d/ && sync || exit 15
            ( while :; do dd if=/dev/urandom of=/run/d/busy bs=1M count=4 conv=notrunc oflag=direct status=none; done ) &
            writer=$!
            $h image backup /dev/vg0/thin --json > {{w}}/thin.json; echo "thin=$?"
            kill $writer; wait $writer 2>/dev/null
            lvs --noheadings -o lv_name vg0 | tr -d ' ' > {{w}}/lvs-after-thin.txt
            umount /run/d
            $h image restore latest --target {{w}}/thin.img > {{w}}/thin-restore.out 2>&1 && e2fsck -fn {{w}}/thin.img > /dev/null 2>&1 && echo "thin-fsck=0"
            mount -o loop,ro {{w}}/thin.img /run/r && cmp /run/src/f2 /run/r/f2 && echo "thin-same"; umount /run/r
            """.Replace("\r", "", StringComparison.Ordinal));

        var psi = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in new[] { Path.Combine(RepositoryRoot(), "tests", "vm", "run.sh"), script, "512" })
        {
            psi.ArgumentList.Add(a);
        }

        using var vm = Process.Start(psi)!;
        var stderr = vm.StandardError.ReadToEndAsync();
        string console = await vm.StandardOutput.ReadToEndAsync() + await stderr;
        await vm.WaitForExitAsync();
        Assert.True(vm.ExitCode == 0, $"the virtual machine's script failed (exit {vm.ExitCode}):\n{console}");

        Assert.Contains("backup=0", console, StringComparison.Ordinal);
        var backup = JsonNode.Parse(File.ReadAllText(Path.Combine(w, "backup.json")))!;
        Assert.Equal("lvm-snapshot", (string)backup["image"]!["consistency"]!);
        var notes = backup["notes"]!.AsArray().Select(n => (string)n!).ToList();
        Assert.Contains(notes, n => n.StartsWith("read from LVM snapshot vg0/haven-", StringComparison.Ordinal));
        Assert.Contains("removed vg0/haven-999999-data, an LVM snapshot that an interrupted backup left behind", notes);
        Assert.Equal(["data", "haven-999998-mine"], File.ReadAllLines(Path.Combine(w, "lvs-after.txt")).Where(l => l.Length > 0).Order(StringComparer.Ordinal));

        Assert.Matches("small=[1-9]", console);
        string small = File.ReadAllText(Path.Combine(w, "small.out"));
        Assert.True(small.Contains("filled up with changes to vg0/data", StringComparison.Ordinal), small);
        Assert.Equal(["data", "haven-999998-mine"], File.ReadAllLines(Path.Combine(w, "lvs-after-small.txt")).Where(l => l.Length > 0).Order(StringComparer.Ordinal));

        Assert.Contains("restore=0", console, StringComparison.Ordinal);
        Assert.True(console.Contains("fsck=0", StringComparison.Ordinal), File.ReadAllText(Path.Combine(w, "fsck.out")));
        Assert.DoesNotContain("differs", console, StringComparison.Ordinal);
        Assert.Contains("/run/r/busy", console, StringComparison.Ordinal);

        Assert.Contains("idle=0", console, StringComparison.Ordinal);
        var idle = JsonNode.Parse(File.ReadAllText(Path.Combine(w, "idle.json")))!;
        Assert.Equal("unmounted", (string)idle["image"]!["consistency"]!);
        Assert.DoesNotContain(idle["notes"]!.AsArray(), n => ((string)n!).Contains("LVM snapshot", StringComparison.Ordinal));

        Assert.Contains("thin=0", console, StringComparison.Ordinal);
        var thin = JsonNode.Parse(File.ReadAllText(Path.Combine(w, "thin.json")))!;
        Assert.Equal("lvm-snapshot", (string)thin["image"]!["consistency"]!);
        Assert.Contains(thin["notes"]!.AsArray(), n => ((string)n!).Contains("a thin snapshot in pool vg0/pool", StringComparison.Ordinal));
        Assert.Equal(["data", "pool", "thin"], File.ReadAllLines(Path.Combine(w, "lvs-after-thin.txt")).Where(l => l.Length > 0).Order(StringComparer.Ordinal));
        Assert.Contains("thin-fsck=0", console, StringComparison.Ordinal);
        Assert.Contains("thin-same", console, StringComparison.Ordinal);
    }

    private static string RepositoryRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Haven.slnx")))
        {
            dir = dir.Parent;
        }

        return dir?.FullName ?? throw new DirectoryNotFoundException("the repository root (Haven.slnx) is not above the test's folder");
    }
}

/// <summary>Tests that boot a virtual machine: never beside other tests.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class VirtualMachineCollection
{
    public const string Name = "virtual machine";
}
