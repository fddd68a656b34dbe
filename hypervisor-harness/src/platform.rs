//! Which KVM we run on: kvm_pvm (software), kvm_intel or kvm_amd, and whether the host is
//! itself a VM.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// "kvm_pvm", "kvm_intel", "kvm_amd", or "unknown".
    pub kvm: String,
    /// The host's /proc/cpuinfo has the `hypervisor` flag.
    pub nested: bool,
}

impl Platform {
    pub fn detect() -> Self {
        Self::detect_in(Path::new("/sys/module"), Path::new("/proc/cpuinfo"))
    }

    pub fn detect_in(modules: &Path, cpuinfo: &Path) -> Self {
        let kvm = ["kvm_pvm", "kvm_intel", "kvm_amd"]
            .iter()
            .find(|m| modules.join(m).exists())
            .map(|m| m.to_string())
            .unwrap_or_else(|| "unknown".to_string());
        let nested = std::fs::read_to_string(cpuinfo)
            .map(|s| cpuinfo_has_hypervisor_flag(&s))
            .unwrap_or(false);
        Self { kvm, nested }
    }

    pub fn to_json(&self) -> PlatformJson {
        PlatformJson {
            kvm: self.kvm.clone(),
            nested: self.nested,
            description: self.to_string(),
        }
    }
}

/// A [`Platform`] in JSON output, with its one-line description.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlatformJson {
    pub kvm: String,
    pub nested: bool,
    pub description: String,
}

fn cpuinfo_has_hypervisor_flag(cpuinfo: &str) -> bool {
    cpuinfo.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim() == "flags" && v.split_whitespace().any(|f| f == "hypervisor")
        })
    })
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kvm.as_str() {
            "kvm_pvm" => "software KVM",
            "kvm_intel" | "kvm_amd" => "hardware KVM",
            _ => "no KVM module found",
        };
        write!(f, "{} ({kind}", self.kvm)?;
        if self.nested {
            write!(f, ", host is itself a VM")?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempdir::TempDir;

    #[test]
    fn detect_from_fake_tree() {
        let tmp = TempDir::new_with_prefix(std::env::temp_dir().join("hh-platform-")).unwrap();
        let dir = tmp.as_path();
        std::fs::create_dir_all(dir.join("mods/kvm_pvm")).unwrap();
        std::fs::write(
            dir.join("cpuinfo"),
            "processor\t: 0\nflags\t\t: fpu sse2 hypervisor lm\n",
        )
        .unwrap();
        let p = Platform::detect_in(&dir.join("mods"), &dir.join("cpuinfo"));
        assert_eq!(
            p,
            Platform {
                kvm: "kvm_pvm".into(),
                nested: true
            }
        );
        assert_eq!(p.to_string(), "kvm_pvm (software KVM, host is itself a VM)");
        let none = Platform::detect_in(&dir.join("nope"), &dir.join("nope"));
        assert_eq!(none.kvm, "unknown");
        assert!(!none.nested);
    }
}
